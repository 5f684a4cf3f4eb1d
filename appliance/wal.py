"""The write-ahead log: segment files of CRC-framed command records, a group-commit writer, a reader.

Every command the matching core accepts is a record here, durable before anything about it leaves the
box. docs/wal.md is the format document; this diagram and the table below are the segment layout
itself; a record (header, command body, seal) is appliance.walcodec's.

Segment file ``wal-<first seq, 20 digits>-<epoch, 10 digits>.seg``, all integers little-endian::

    0       8       10      12      16              24      28      32
    +-------+-------+-------+-------+---------------+-------+-------+
    | magic |version|hdr len| epoch |   first_seq   | rsvd  |hdr crc|   segment header (32 bytes)
    +-------+-------+-------+-------+---------------+-------+-------+
    | record | record | ... | seal | record | ... | seal |             records, back to back
                                                                      (appliance.walcodec)

A seal (kind 0) closes every ~1 MiB chunk and every segment, so that recovery verifies a chunk with
one crc32 call instead of one per record; each record still carries its own CRC, used for the
unsealed tail, to find a torn tail and to locate corruption.

Owned by the matching thread: WalWriter. Any thread: WalReader (its own files). The writer never reads
a clock: the caller passes ``now_ns`` (the interval policy compares it).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import mmap
import os
import struct
import sys
from collections import deque
from typing import Any, Final, Iterator, NamedTuple, Protocol

from appliance.catalogue import Command
from appliance.fsutil import atomic_write, fsync_dir
from appliance.metrics import S_FSYNC, S_WAL_WRITE, StageClock
from appliance.walcodec import (
    CRC_START,
    DECODER_BY_KIND,
    FORMAT_VERSION,
    HEAD,
    KIND_OFFSET,
    KIND_SEAL,
    PREFIX,
    RECORD_HEADER_SIZE,
    RECORD_SIZES,
    SEAL,
    SEAL_BODY,
    SEAL_SIZE,
    SEQ_OFFSET,
    SEQ_TS_EPOCH,
    SIGNATURE,
    SIGNATURE_OFFSET,
    SIZE_BY_KIND,
    crc32,
    field_offsets,
    seal_frame,
)

# Re-exported for the modules that still import them from here (appliance.partition: LAYOUTS,
# MalformedCommand; appliance.gateway.server: MalformedCommand;
# appliance.walstage: frame_records). They are appliance.walcodec's; new code imports them there.
from appliance.walcodec import LAYOUTS as LAYOUTS
from appliance.walcodec import MalformedCommand as MalformedCommand
from appliance.walcodec import decode_many as decode_many
from appliance.walcodec import frame_records as frame_records

_fdatasync = getattr(os, "fdatasync", os.fsync)  # module attribute: tests replace it to inject EIO

# ================================================================================================
# The segment header (a record's layout is appliance.walcodec's)
# ================================================================================================

SEGMENT_MAGIC: Final = b"MWWALSEG"

SEGMENT_HEADER_FIELDS: Final = (
    ("magic", "8s"),
    ("version", "H"),
    ("header_size", "H"),
    ("epoch", "I"),
    ("first_seq", "Q"),
    ("reserved", "I"),
    ("header_crc", "I"),   # crc32 of the bytes before it
)
SEGMENT_HEADER: Final = struct.Struct("<" + "".join(code for _, code in SEGMENT_HEADER_FIELDS))
SEGMENT_HEADER_SIZE: Final = SEGMENT_HEADER.size  # 32
_SEGMENT_CRC_AT: Final = field_offsets(SEGMENT_HEADER_FIELDS)["header_crc"]  # 28
_SEGMENT_CRC: Final = struct.Struct("<" + SEGMENT_HEADER_FIELDS[-1][1])

PIECE: Final = 1024  # commands per list handed out by WalReader.batches


def segment_header(epoch: int, first_seq: int) -> bytes:
    head = SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, SEGMENT_HEADER_SIZE, epoch, first_seq, 0, 0)
    return head[:_SEGMENT_CRC_AT] + _SEGMENT_CRC.pack(crc32(head[:_SEGMENT_CRC_AT]))


def segment_name(first_seq: int, epoch: int) -> str:
    return "wal-%020d-%010d.seg" % (first_seq, epoch)


# ================================================================================================
# Configuration
# ================================================================================================

POLICY_BATCH: Final = "batch"        # fdatasync at the end of every batch, before its acks (default)
POLICY_INTERVAL: Final = "interval"  # fdatasync every interval_ms; acks wait for the fsync covering them
POLICY_NONE: Final = "none"          # never fsync: acks are NOT durable. Development only.
POLICIES: Final = (POLICY_BATCH, POLICY_INTERVAL, POLICY_NONE)

EXIT_DURABILITY_FAILURE: Final = 74  # EX_IOERR: the process stops rather than ack what is not durable


@dataclasses.dataclass(frozen=True)
class WalConfig:
    """Durability settings of one partition (the daemon loads them from TOML)."""

    dir: str
    policy: str = POLICY_BATCH
    interval_ms: int = 2                       # interval policy: fsync at most this long after a write
    segment_bytes: int = 16 << 20              # a new segment once a segment reaches this size
    seal_bytes: int = 1 << 20                  # a seal record after this many bytes of records
    snapshot_dir: str | None = None            # default: <dir>/snapshots
    snapshot_every_events: int = 1_000_000     # 0: never by count
    snapshot_every_seconds: int = 300          # 0: never by time
    snapshots_keep: int = 3

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"WAL durability policy {self.policy!r}: one of {', '.join(POLICIES)}")
        if self.interval_ms < 1 and self.policy == POLICY_INTERVAL:
            raise ValueError("WAL interval policy needs interval_ms >= 1")
        if self.segment_bytes < 4096:
            raise ValueError("WAL segment_bytes must be at least 4096")
        if self.seal_bytes < 1024:
            raise ValueError("WAL seal_bytes must be at least 1024")
        if self.snapshots_keep < 1:
            raise ValueError("snapshots_keep must be at least 1")

    @property
    def snapshots(self) -> str:
        return self.snapshot_dir or os.path.join(self.dir, "snapshots")


def warn_policy_none(where: str) -> None:
    """The loud label of the development policy."""
    print(
        "matchwire: WARNING: WAL durability policy 'none' in " + where + ": nothing is fsynced, "
        "acknowledged commands can be LOST on a crash. For development only.",
        file=sys.stderr,
    )


# ================================================================================================
# Errors
# ================================================================================================


class WalError(Exception):
    """A WAL that cannot be used as it is."""


class WalCorruptError(WalError):
    """Damage that is not a torn tail: start-up stops. Names the file and the byte offset."""

    def __init__(self, path: str, offset: int, what: str) -> None:
        super().__init__(f"WAL corrupt: {path} at offset {offset}: {what}")
        self.path = path
        self.offset = offset


class DurabilityError(WalError):
    """A write or fsync failed, or a newer process fenced this one off: fail closed, exit non-zero."""


class StaleEpochError(WalError):
    """A record of an older epoch than the writer's: refused."""


# ================================================================================================
# The epoch file: fencing
# ================================================================================================


class EpochState(NamedTuple):
    epoch: int
    clean: bool      # written by a clean shutdown: the next start may continue the same epoch
    last_seq: int    # with clean: the last sequence number in the WAL at shutdown
    token: str       # which process start wrote it


FENCE_SIZE: Final = 8   # <dir>/FENCE: one word, the token's of the newest start (EpochFile)


class EpochFile:
    """<dir>/EPOCH: the current sequencer epoch and who owns it. Replaced atomically (new inode).

    A start writes a new token (and usually a new epoch) *before* it reads the WAL. A writer checks,
    after each fsync and before its acks are released, that the file is still the one it wrote; if
    another start replaced it, the writer is fenced off: it fails closed and acks nothing more.

    That check is a memory load, not a system call: every ``write`` also stores a word derived
    from its token in <dir>/FENCE (8 bytes, written in place, never replaced), which each
    EpochFile keeps mapped; ``claimed()`` compares the mapped word with its own. A newer start
    stores its word after its rename of EPOCH and before it reads the WAL, so an older writer that
    still sees its own word acknowledges only records the newer start will read.
    ``still_mine()`` is the slower check by the inode of EPOCH.
    """

    NAME: Final = "EPOCH"
    FENCE_NAME: Final = "FENCE"

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, self.NAME)
        self.directory = directory
        self.ino = -1
        self.word = 0
        self._fence_map: mmap.mmap | None = None
        self._fence_view: memoryview | None = None

    def read(self) -> EpochState | None:
        try:
            with open(self.path, "rb") as f:
                d = json.loads(f.read())
        except FileNotFoundError:
            return None
        except ValueError as e:
            raise WalError(f"{self.path}: unreadable epoch file ({e})") from None
        return EpochState(int(d["epoch"]), bool(d["clean"]), int(d["last_seq"]), str(d["token"]))

    def write(self, state: EpochState) -> None:
        data = json.dumps(state._asdict(), sort_keys=True).encode() + b"\n"
        atomic_write(self.path, data)
        self.ino = os.stat(self.path).st_ino
        self._claim(state.token)

    def _claim(self, token: str) -> None:
        """Store this token's word in FENCE (created once, 8 bytes), through this object's mapping."""
        view = self._fence_view
        if view is None:
            path = os.path.join(self.directory, self.FENCE_NAME)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if os.fstat(fd).st_size < FENCE_SIZE:
                    os.ftruncate(fd, FENCE_SIZE)
                    os.fsync(fd)
                    fsync_dir(self.directory)
                self._fence_map = mmap.mmap(fd, FENCE_SIZE)
            finally:
                os.close(fd)
            view = self._fence_view = memoryview(self._fence_map).cast("Q")
        # never 0: a FENCE just created holds 0, which matches no start
        self.word = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little") | 1
        view[0] = self.word

    def claimed(self) -> bool:
        """FENCE still holds the word of this object's last write: no newer start since (no system call)."""
        view = self._fence_view
        return view is not None and view[0] == self.word

    def still_mine(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.ino
        except FileNotFoundError:
            return False


def new_token() -> str:
    return "%d-%s" % (os.getpid(), os.urandom(6).hex())


# ================================================================================================
# Writer
# ================================================================================================


class LogWriter(Protocol):
    """What the partition calls on its log: WalWriter, or appliance.walstage.RemoteWal when the WAL
    stage writes it."""

    policy: str
    epoch: int
    stages: StageClock | None
    written_seq: int      # the last seq appended (durable or not)

    @property
    def next_seq(self) -> int: ...
    @property
    def durable_seq(self) -> int: ...
    @property
    def failed(self) -> DurabilityError | None: ...
    def append_batch(self, first_seq: int, ts_ns: int, epoch: int, cmds: list[Any], bodies: list[bytes]) -> None: ...
    def commit(self, now_ns: int) -> int: ...
    def poll(self, now_ns: int) -> int: ...
    def sync(self, now_ns: int = 0) -> int: ...
    def close(self) -> None: ...


class WalWriter:
    """Owned by the matching thread: appends records to the current segment; one commit per batch.

    ``append`` only frames and buffers. ``commit(now_ns)`` writes the buffered records with one
    write, fsyncs them as the policy says and returns the durable sequence number: every record up to
    it may be acknowledged. Under the interval policy ``poll(now_ns)`` fsyncs when the interval has
    passed. Any write or fsync error, or a fence by a newer process, fails closed: DurabilityError
    now and on every later call.
    """

    stages: StageClock | None = None    # the daemon's stage clock when stage timing is on
    # (first seq, last seq, records) of every batch appended, when someone reads them (the feed stage)
    tap: deque[tuple[int, int, list[bytes]]] | None = None

    def __init__(
        self,
        directory: str,
        epoch: int,
        next_seq: int,
        *,
        policy: str = POLICY_BATCH,
        interval_ms: int = 2,
        segment_bytes: int = 16 << 20,
        seal_bytes: int = 1 << 20,
        fence: EpochFile | None = None,
        continue_segment: str | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"WAL durability policy {policy!r}: one of {', '.join(POLICIES)}")
        self.directory = directory
        self.epoch = epoch
        self.policy = policy
        self._sync_batch = policy == POLICY_BATCH
        self._sync_interval = policy == POLICY_INTERVAL
        self._interval_ns = interval_ms * 1_000_000
        self.segment_bytes = segment_bytes
        self.seal_bytes = seal_bytes
        self.fence = fence
        self._next_seq = next_seq          # the next seq append() accepts
        self.written_seq = next_seq - 1    # the last seq handed to the kernel
        self.durable_seq = next_seq - 1    # the last seq made durable under the policy
        self._pending: list[bytes] = []
        self._pending_count = 0            # records in _pending (an item may hold several: append_framed)
        self._pending_last_ts = 0
        self._last_sync_ns = -(1 << 62)
        self._unsynced = False
        self._failed: DurabilityError | None = None
        self._fd = -1
        self.path = ""
        self._size = 0
        self._chunk_start = 0
        self._chunk_crc = 0
        self._chunk_count = 0
        self._chunk_last_ts = 0
        self.segments_created = 0
        self.fsyncs = 0
        if policy == POLICY_NONE:
            warn_policy_none(directory)
        try:
            if continue_segment:
                self._continue(continue_segment)
            else:
                self._new_segment(next_seq)
        except OSError as e:
            self._fail("opening a segment", e)

    # -- hot path ---------------------------------------------------------------------------------
    def append(self, seq: int, ts_ns: int, epoch: int, kind: int, body: bytes) -> None:
        """Buffer one record (nothing is written before commit)."""
        if epoch != self.epoch or seq != self._next_seq or self._failed:
            self._refuse(seq, epoch)
        self._next_seq = seq + 1
        rest = HEAD.pack(seq, ts_ns, epoch, kind) + body
        rec = PREFIX.pack(len(rest) + CRC_START, crc32(rest)) + rest
        self._pending.append(rec)
        self._pending_count += 1
        self._pending_last_ts = ts_ns
        if self.tap is not None:
            self.tap.append((seq, seq, [rec]))

    def append_batch(self, first_seq: int, ts_ns: int, epoch: int, cmds: list[Any], bodies: list[bytes]) -> None:
        """Buffer a stamped batch: cmds[i] (its KIND) with bodies[i] as seq first_seq + i."""
        if epoch != self.epoch or first_seq != self._next_seq or self._failed:
            self._refuse(first_seq, epoch)
        n0 = len(self._pending)
        frame_records(first_seq, ts_ns, epoch, cmds, bodies, self._pending)
        seq = first_seq + len(bodies)
        self._next_seq = seq
        self._pending_count += seq - first_seq
        if self.tap is not None:
            self.tap.append((first_seq, seq - 1, self._pending[n0:]))
        self._pending_last_ts = ts_ns

    def append_framed(self, data: bytes, count: int, first_seq: int, last_seq: int, last_ts_ns: int) -> None:
        """Buffer ``count`` records framed elsewhere (the WAL stage: the matcher's own bytes), seqs
        first_seq..last_seq in order."""
        if first_seq != self._next_seq or last_seq - first_seq + 1 != count or self._failed:
            self._refuse(first_seq, self.epoch)
        self._pending.append(data)
        self._pending_count += count
        self._next_seq = last_seq + 1
        self._pending_last_ts = last_ts_ns

    def commit(self, now_ns: int) -> int:
        """Write what append() buffered (one write), fsync per policy; return the durable seq."""
        if self._failed:
            raise self._failed
        pending = self._pending
        if pending:
            count = self._pending_count
            data = b"".join(pending)
            pending.clear()
            self._pending_count = 0
            last = self._next_seq - 1
            self._chunk_crc = crc32(data, self._chunk_crc)
            self._chunk_count += count
            self._chunk_last_ts = self._pending_last_ts
            end = self._size + len(data)
            if end - self._chunk_start >= self.seal_bytes or end >= self.segment_bytes:
                data += self._seal(last, end)
            try:
                self._write(data)
                self.written_seq = last
                st = self.stages
                if st is not None:
                    st.lap(S_WAL_WRITE)
                if self._sync_batch or (self._sync_interval and now_ns - self._last_sync_ns >= self._interval_ns):
                    self._fsync(now_ns)
                    if st is not None:
                        st.lap(S_FSYNC)
                elif self._sync_interval:
                    self._unsynced = True
                else:
                    self.durable_seq = last
                self._check_fence()
                if self._size >= self.segment_bytes:
                    self._roll(now_ns)
            except OSError as e:
                self._fail("writing", e)
        elif self._unsynced and now_ns - self._last_sync_ns >= self._interval_ns:
            self.poll(now_ns)
        return self.durable_seq

    def poll(self, now_ns: int) -> int:
        """Interval policy: fsync written records if the interval has passed. Returns the durable seq."""
        if self._failed:
            raise self._failed
        if self._unsynced and now_ns - self._last_sync_ns >= self._interval_ns:
            try:
                self._fsync(now_ns)
                self._check_fence()
            except OSError as e:
                self._fail("syncing", e)
        return self.durable_seq

    def sync(self, now_ns: int = 0) -> int:
        """Write and fsync everything appended, whatever the policy (snapshots, shutdown)."""
        self.commit(now_ns)
        if self.written_seq > self.durable_seq or self._unsynced or self.policy == POLICY_NONE:
            try:
                self._fsync(now_ns)
                self._check_fence()
            except OSError as e:
                self._fail("syncing", e)
        return self.durable_seq

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def failed(self) -> DurabilityError | None:
        return self._failed

    def close(self) -> None:
        """Seal the current chunk, fsync and close (clean shutdown). A failed writer just closes."""
        if self._fd < 0:
            return
        if not self._failed:
            self.sync()
            try:
                if self._chunk_count:
                    self._write(self._seal(self.written_seq, self._size))
                    self._fsync(0)
            except OSError as e:
                self._fail("sealing", e)
        os.close(self._fd)
        self._fd = -1

    # -- internals --------------------------------------------------------------------------------
    def _refuse(self, seq: int, epoch: int) -> None:
        if self._failed:
            raise self._failed
        if epoch < self.epoch:
            raise StaleEpochError(f"record of epoch {epoch} refused: this WAL writer is at epoch {self.epoch}")
        if epoch != self.epoch:
            raise WalError(f"record of epoch {epoch} for a writer of epoch {self.epoch}")
        raise WalError(f"sequence gap: record seq {seq}, the WAL expects {self._next_seq}")

    def _seal(self, last_seq: int, at: int) -> bytes:
        seal = seal_frame(last_seq, self._chunk_last_ts, self.epoch, self._chunk_start, self._chunk_crc,
                           self._chunk_count)
        self._chunk_start = at + len(seal)
        self._chunk_crc = 0
        self._chunk_count = 0
        return seal

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        fd = self._fd
        while view:
            n = os.write(fd, view)
            self._size += n
            view = view[n:]

    def _fsync(self, now_ns: int) -> None:
        _fdatasync(self._fd)
        self.fsyncs += 1
        self._last_sync_ns = now_ns
        self._unsynced = False
        self.durable_seq = self.written_seq

    def _check_fence(self) -> None:
        if self.fence is not None and not self.fence.claimed():
            err = DurabilityError(
                f"WAL fenced: {self.fence.path} was replaced by a newer start of this partition; "
                f"this process (epoch {self.epoch}) stops without acknowledging seq > {self.durable_seq}"
            )
            self._failed = err
            raise err

    def _fail(self, doing: str, e: OSError) -> None:
        err = DurabilityError(
            f"WAL {doing} failed: {self.path or self.directory} at offset {self._size}: "
            f"{e.strerror or e} (errno {e.errno}); no further acknowledgements"
        )
        self._failed = err
        raise err from e

    def _new_segment(self, first_seq: int) -> None:
        path = os.path.join(self.directory, segment_name(first_seq, self.epoch))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self._fd = fd
        self.path = path
        self._size = 0
        self._write(segment_header(self.epoch, first_seq))
        if self.policy != POLICY_NONE:
            os.fsync(fd)
            fsync_dir(self.directory)
        self._chunk_start = self._size
        self._chunk_crc = 0
        self._chunk_count = 0
        self.segments_created += 1

    def _continue(self, path: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self._fd = fd
        self.path = path
        self._size = os.fstat(fd).st_size
        self._chunk_start = self._size
        self._chunk_crc = 0
        self._chunk_count = 0

    def _roll(self, now_ns: int) -> None:
        if self.policy != POLICY_NONE and (self._unsynced or self.durable_seq < self.written_seq):
            self._fsync(now_ns)
        os.close(self._fd)
        self._fd = -1
        self._new_segment(self._next_seq)


# ================================================================================================
# Reader
# ================================================================================================


class SegmentFile(NamedTuple):
    path: str
    first_seq: int
    epoch: int
    size: int


class WalReader:
    """Reads a WAL directory as one gap-free chain of records. Owned by the thread that made it.

    Segments are ordered by (first seq, epoch). A segment is read up to the first seq of any segment
    of a newer epoch (its records from there on were written by a fenced, stale process: refused,
    with a note). A torn or corrupt tail of the last segment ends the log after the last valid
    record: with ``repair=True`` the file is truncated there (start-up), else it is only noted
    (tools). Damage anywhere else raises WalCorruptError naming the file and offset.

    ``batches(after_seq)`` is the fast path (recovery): lists of commands per verified chunk.
    ``records(after_seq)`` verifies and yields every record as (seq, ts_ns, epoch, command).
    ``stamps(after_seq)`` gives (seq, ts_ns) per record, in verified chunks, decoding nothing.
    After a complete iteration: last_seq, last_ts_ns, last_epoch, tail_sealed.
    """

    def __init__(self, directory: str, *, repair: bool = False) -> None:
        self.directory = directory
        self.repair = repair
        self.notes: list[str] = []
        self.last_seq = 0
        self.last_ts_ns = 0
        self.last_epoch = 0
        self.tail_sealed = True
        self.records_read = 0
        segs = list_segments(directory, self.notes, repair)
        # A segment is read up to (excluding) the first seq of any newer epoch's segment.
        chain: list[tuple[SegmentFile, int]] = []
        for s in segs:
            limit = min((t.first_seq for t in segs if t.epoch > s.epoch), default=1 << 64)
            if s.first_seq >= limit:
                if s.size > SEGMENT_HEADER_SIZE:
                    self.notes.append(
                        f"{s.path}: refused, epoch {s.epoch} was fenced off by a newer epoch from seq {limit}"
                    )
                continue
            chain.append((s, limit))
        self.chain = chain
        self.first_seq = chain[0][0].first_seq if chain else 1

    # -- public iteration -------------------------------------------------------------------------
    def batches(self, after_seq: int = 0) -> Iterator[tuple[int, list[Command]]]:
        """(first seq, commands) for every verified chunk holding records with seq > after_seq."""
        for seg, end_seq, is_last, skip in self._plan(after_seq):
            if skip:
                continue
            yield from self._segment(seg, end_seq, is_last, after_seq, "cmds")

    def stamps(self, after_seq: int = 0) -> Iterator[tuple[int, list[tuple[int, int]]]]:
        """(first seq, [(seq, ts_ns), ...]) of every record with seq > after_seq; nothing decoded."""
        for seg, end_seq, is_last, skip in self._plan(after_seq):
            if skip:
                continue
            yield from self._segment(seg, end_seq, is_last, after_seq, "stamps")

    def records(self, after_seq: int = 0) -> Iterator[tuple[int, int, int, Command]]:
        """Every record with seq > after_seq, each verified, as (seq, ts_ns, epoch, command)."""
        for seg, end_seq, is_last, skip in self._plan(after_seq):
            if skip:
                continue
            for chunk in self._segment(seg, end_seq, is_last, after_seq, "records"):
                yield from chunk[1]

    def _plan(self, after_seq: int) -> Iterator[tuple[SegmentFile, int, bool, bool]]:
        chain = self.chain
        for i, (seg, limit) in enumerate(chain):
            is_last = i == len(chain) - 1
            end_seq = limit - 1
            if not is_last:
                nxt = chain[i + 1][0].first_seq
                end_seq = min(end_seq, nxt - 1)
                if nxt - 1 <= after_seq:
                    # Entirely covered by after_seq: not read (start-up from a snapshot).
                    self.last_seq = nxt - 1
                    self.last_epoch = seg.epoch
                    yield seg, end_seq, is_last, True
                    continue
            if i and self.last_seq and seg.first_seq != self.last_seq + 1:
                raise WalCorruptError(seg.path, 0, f"starts at seq {seg.first_seq}, expected {self.last_seq + 1}"
                                      " (records missing between segments)")
            yield seg, end_seq, is_last, False

    # -- one segment --------------------------------------------------------------------------------
    def _segment(
        self, seg: SegmentFile, end_seq: int, is_last: bool, after_seq: int, mode: str
    ) -> Iterator[tuple[int, list[Any]]]:
        with open(seg.path, "rb") as f:
            buf = f.read()
        end = len(buf)
        off = SEGMENT_HEADER_SIZE
        expected = seg.first_seq
        self.last_epoch = seg.epoch
        self.tail_sealed = True
        if expected > end_seq:
            return
        # Sealed chunks: one crc32 each; from the first chunk without a valid seal, record by record.
        stamps = mode == "stamps"
        records = mode == "records"
        head = SEQ_TS_EPOCH.unpack_from
        at = SEQ_OFFSET
        while off < end:
            sealed = self._sealed_chunk(seg, buf, off, expected)
            if sealed is None:
                break  # no valid seal ahead: verify the rest record by record
            nxt, last_seq, ts_ns, offs = sealed
            stop = min(last_seq, end_seq)
            s = max(expected, after_seq + 1)
            # Decode and hand out in pieces of PIECE commands: each is applied while its
            # objects are still in the CPU cache.
            while s <= stop:
                i = s - expected
                j = min(i + PIECE, stop - expected + 1)
                if stamps:
                    yield s, [head(buf, q + at)[:2] for q in offs[i:j]]
                    s += j - i
                    continue
                try:
                    piece = decode_many(buf, offs[i:j])
                except (UnicodeDecodeError, TypeError, struct.error) as e:
                    raise WalCorruptError(seg.path, offs[i], f"undecodable command in this chunk ({e})") from None
                if records:   # (seq, ts_ns, epoch, command)
                    yield s, [head(buf, q + at) + (c,) for q, c in zip(offs[i:j], piece)]
                else:
                    yield s, piece
                s += j - i
            self._advance(stop, ts_ns, seg.epoch, stop - expected + 1)
            expected = stop + 1
            off = nxt
            if expected > end_seq:
                return
        yield from self._careful(seg, buf, off, expected, end_seq, is_last, after_seq, mode)

    def _sealed_chunk(
        self, seg: SegmentFile, buf: bytes, off: int, expected: int
    ) -> tuple[int, int, int, list[int]] | None:
        """Check the chunk starting at `off` against the seal that ends it: one crc32 for the chunk.

        Returns (offset after the seal, last seq, the seal's ts_ns, offsets of the chunk's records),
        or None when there is no valid seal ahead (the caller verifies record by record).
        """
        end = len(buf)
        sizes = SIZE_BY_KIND
        offs: list[int] = []
        append = offs.append
        p = off
        while True:  # walk to the seal by record sizes
            if p + RECORD_HEADER_SIZE > end:
                return None
            kind = buf[p + KIND_OFFSET]
            size = sizes[kind]
            if not size or p + size > end:
                return None
            if kind == KIND_SEAL:
                break
            append(p)
            p += size
        length, crc, last_seq, ts_ns, epoch, _k, chunk_start, chunk_crc, count = SEAL.unpack_from(buf, p)
        if (
            length != SEAL_SIZE
            or crc32(memoryview(buf)[p + CRC_START:p + SEAL_SIZE]) != crc
            or chunk_start != off
            or epoch != seg.epoch
            or not count
            or count != len(offs)
            or last_seq != expected + count - 1
            or crc32(memoryview(buf)[off:p]) != chunk_crc
            or SEQ_TS_EPOCH.unpack_from(buf, off + SEQ_OFFSET)[0] != expected
        ):
            return None
        return p + SEAL_SIZE, last_seq, ts_ns, offs

    def _advance(self, last_seq: int, ts_ns: int, epoch: int, count: int) -> None:
        self.last_seq = last_seq
        if ts_ns > self.last_ts_ns:
            self.last_ts_ns = ts_ns
        self.last_epoch = epoch
        self.records_read += count

    def _careful(
        self, seg: SegmentFile, buf: bytes, off: int, expected: int, end_seq: int, is_last: bool,
        after_seq: int, mode: str,
    ) -> Iterator[tuple[int, list[Any]]]:
        """Verify record by record from `off` to the end of the segment (or end_seq)."""
        end = len(buf)
        mv = memoryview(buf)
        out: list[Any] = []
        first_out = 0
        sizes = RECORD_SIZES
        chunk_start = off
        chunk_count = 0
        batch = 4096
        while off < end:
            bad = ""
            if end - off < RECORD_HEADER_SIZE:
                bad = "truncated record header"
            else:
                length, crc = PREFIX.unpack_from(buf, off)
                kind = buf[off + KIND_OFFSET]
                if sizes.get(kind) != length:
                    bad = f"bad record (kind {kind}, length {length})"
                elif off + length > end:
                    bad = f"record of {length} bytes runs past the end of the file"
                elif crc32(mv[off + CRC_START:off + length]) != crc:
                    bad = "record CRC mismatch"
                else:
                    seq, ts_ns, epoch = SEQ_TS_EPOCH.unpack_from(buf, off + SEQ_OFFSET)
                    if epoch != seg.epoch:
                        bad = f"record of epoch {epoch} in a segment of epoch {seg.epoch}"
                    elif kind == KIND_SEAL:
                        c_start, c_crc, c_count = SEAL_BODY.unpack_from(buf, off + RECORD_HEADER_SIZE)
                        if c_start != chunk_start or c_count != chunk_count or crc32(mv[c_start:off]) != c_crc:
                            bad = "seal does not match the records before it"
                        else:
                            off += length
                            chunk_start = off
                            chunk_count = 0
                            continue
                    elif seq != expected:
                        if seq > end_seq and expected > end_seq:
                            break
                        bad = f"record seq {seq}, expected {expected}"
            if bad:
                self._damage(seg, buf, off, expected - 1, end_seq, is_last, bad)
                break
            if seq > end_seq:
                break
            chunk_count += 1
            if seq > after_seq:
                if not out:
                    first_out = seq
                if mode == "stamps":
                    out.append((seq, ts_ns))
                else:
                    try:
                        cmd = DECODER_BY_KIND[kind](buf, off)
                    except (UnicodeDecodeError, TypeError) as e:
                        raise WalCorruptError(seg.path, off, f"undecodable command ({e})") from None
                    out.append(cmd if mode == "cmds" else (seq, ts_ns, epoch, cmd))
                if len(out) >= batch:
                    yield first_out, out
                    out = []
            self._advance(seq, ts_ns, epoch, 1)
            expected = seq + 1
            off += length
            if seq == end_seq:
                break
        else:
            if not is_last and expected <= end_seq:
                raise WalCorruptError(seg.path, off, f"segment ends at seq {expected - 1} but the next one "
                                      f"starts at seq {end_seq + 1}")
        if is_last:
            self.tail_sealed = chunk_count == 0 and off >= end
        if out:
            yield first_out, out

    def _damage(
        self, seg: SegmentFile, buf: bytes, off: int, last_good: int, end_seq: int, is_last: bool, what: str
    ) -> None:
        """A bad record at `off`: a torn tail (truncate, say so) or corruption (stop)."""
        if last_good >= end_seq:
            return  # everything needed was read; what follows was fenced off
        if not is_last:
            raise WalCorruptError(seg.path, off, what + " (not at the tail: later segments follow)")
        later = _find_valid_record(buf, off + 1, seg.epoch, last_good)
        if later >= 0:
            raise WalCorruptError(seg.path, off, what + f" (a valid record follows at offset {later}: "
                                  "this is not a torn tail)")
        torn = len(buf) - off
        if self.repair:
            with open(seg.path, "r+b") as f:
                f.truncate(off)
                f.flush()
                os.fsync(f.fileno())
            self.notes.append(f"{seg.path}: torn tail at offset {off} ({what}): {torn} bytes after seq "
                              f"{last_good} truncated")
        else:
            self.notes.append(f"{seg.path}: torn tail at offset {off} ({what}): {torn} bytes after seq "
                              f"{last_good} ignored (start-up would truncate them)")


def _find_valid_record(buf: bytes, start: int, epoch: int, after_seq: int) -> int:
    """Offset of the first CRC-valid record of this epoch with seq > after_seq at or after start, or -1.

    Candidates are found with bytes.find on the (epoch, kind, pad) signature of a header
    (walcodec.SIGNATURE, at SIGNATURE_OFFSET).
    """
    mv = memoryview(buf)
    best = -1
    for kind, size in RECORD_SIZES.items():
        sig = SIGNATURE.pack(epoch, kind)
        p = buf.find(sig, start + SIGNATURE_OFFSET)
        while p >= 0:
            r = p - SIGNATURE_OFFSET
            if best >= 0 and r >= best:
                break
            if r + size <= len(buf):
                length, crc = PREFIX.unpack_from(buf, r)
                if length == size and crc32(mv[r + CRC_START:r + size]) == crc:
                    seq = SEQ_TS_EPOCH.unpack_from(buf, r + SEQ_OFFSET)[0]
                    if seq > after_seq:
                        best = r
                        break
            p = buf.find(sig, p + 1)
    return best


def list_segments(directory: str, notes: list[str] | None = None, repair: bool = False) -> list[SegmentFile]:
    """The segment files of a WAL directory, ordered by (first seq, epoch), headers checked."""
    try:
        names = sorted(n for n in os.listdir(directory) if n.startswith("wal-") and n.endswith(".seg"))
    except FileNotFoundError:
        return []
    segs: list[SegmentFile] = []
    for name in names:
        path = os.path.join(directory, name)
        with open(path, "rb") as f:
            head = f.read(SEGMENT_HEADER_SIZE)
            size = os.fstat(f.fileno()).st_size
        ok = len(head) == SEGMENT_HEADER_SIZE
        if ok:
            magic, version, hsize, epoch, first_seq, _r, hcrc = SEGMENT_HEADER.unpack(head)
            ok = magic == SEGMENT_MAGIC and crc32(head[:_SEGMENT_CRC_AT]) == hcrc
        if not ok:
            segs.append(SegmentFile(path, -1, -1, size))
            continue
        if version != FORMAT_VERSION or hsize != SEGMENT_HEADER_SIZE:
            raise WalError(f"{path}: WAL format version {version} (header {hsize} bytes); this reader knows "
                           f"version {FORMAT_VERSION}")
        if name != segment_name(first_seq, epoch):
            raise WalCorruptError(path, 0, f"header says first seq {first_seq}, epoch {epoch}: not its name")
        segs.append(SegmentFile(path, first_seq, epoch, size))
    bad = [s for s in segs if s.first_seq < 0]
    if bad:
        # A segment whose header never reached the disk can only be the newest one (a crash while
        # creating it); it holds nothing. Anywhere else it is damage.
        good = [s for s in segs if s.first_seq >= 0]
        newest = max(good, key=lambda s: (s.first_seq, s.epoch)) if good else None
        for s in bad:
            name_seq = _name_seq(s.path)
            if s.size < SEGMENT_HEADER_SIZE and (newest is None or name_seq >= newest.first_seq):
                if notes is not None:
                    verb = "removed" if repair else "ignored"
                    notes.append(f"{s.path}: segment header incomplete ({s.size} bytes): {verb}")
                if repair:
                    os.unlink(s.path)
                    fsync_dir(directory)
            else:
                raise WalCorruptError(s.path, 0, "bad segment header")
        segs = good
    segs.sort(key=lambda s: (s.first_seq, s.epoch))
    return segs


def _name_seq(path: str) -> int:
    try:
        return int(os.path.basename(path).split("-")[1])
    except (IndexError, ValueError):
        return -1
