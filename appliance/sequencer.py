"""The sequencer: one gap-free sequence number and one timestamp per command.

Owned by the matching thread (single writer). Sans-IO: the caller reads the clock once per batch and
passes ``now_ns``; everything downstream (WAL, engine, feeds, execution reports) uses the stamp.

    seq    u64  1, 2, 3, ... with no gap and no repeat, across restarts (recovery continues it)
    ts_ns  u64  nanoseconds since the Unix epoch, one value for every command of a batch; never
                decreases (a clock stepping back keeps the last stamp until it catches up)
    epoch  u32  which start of the partition stamped the command; every start that cannot prove it
                continues the previous process's sequence takes a new, larger epoch, and the WAL
                refuses records of an older epoch (appliance.wal: EpochFile, WalWriter, WalReader)
"""
from __future__ import annotations

from typing import Final

MAX_SEQ: Final = (1 << 64) - 1
MAX_EPOCH: Final = (1 << 32) - 1


class SequenceError(ValueError):
    """A stamp that would break the sequence (overflow, a clock before the epoch of time)."""


class Sequencer:
    """Owned by the matching thread: hands out sequence numbers and batch timestamps."""

    __slots__ = ("next_seq", "epoch", "last_ts_ns")

    def __init__(self, next_seq: int = 1, epoch: int = 1, last_ts_ns: int = 0) -> None:
        if not 1 <= next_seq <= MAX_SEQ:
            raise SequenceError(f"next sequence number {next_seq} outside 1..2^64-1")
        if not 1 <= epoch <= MAX_EPOCH:
            raise SequenceError(f"epoch {epoch} outside 1..2^32-1")
        self.next_seq = next_seq
        self.epoch = epoch
        self.last_ts_ns = last_ts_ns

    def stamp(self, count: int, now_ns: int) -> tuple[int, int]:
        """Reserve `count` consecutive sequence numbers; return (first seq, ts_ns) for the batch.

        The batch's commands take first .. first+count-1 (inclusive), all with the same ts_ns.
        """
        first = self.next_seq
        last = first + count - 1
        if last > MAX_SEQ:
            raise SequenceError("sequence number space exhausted")
        ts = now_ns if now_ns > self.last_ts_ns else self.last_ts_ns
        if ts < 0 or ts > MAX_SEQ:
            raise SequenceError(f"timestamp {now_ns} ns outside u64")
        self.next_seq = last + 1
        self.last_ts_ns = ts
        return first, ts

    @property
    def last_seq(self) -> int:
        """The last sequence number handed out (0 before the first)."""
        return self.next_seq - 1

    def __repr__(self) -> str:
        return f"Sequencer(next_seq={self.next_seq}, epoch={self.epoch}, last_ts_ns={self.last_ts_ns})"
