"""One partition's duty cycle: sequence, log, commit, apply, release. The caller owns the clock.

Owned by the matching thread. ``process_batch(cmds, now_ns)`` is step 2-5 of the duty cycle in
docs/wal.md (and /work/shared/ARCHITECTURE.md):

    each command's WAL body, as it came off its ring or encoded here (a command that cannot be
    written is rejected, unsequenced)
    stamp the batch: seq first..last, one ts_ns              (appliance.sequencer)
    append the records, one commit (write + fdatasync)        (appliance.wal, per the policy)
    apply the committed commands to the engine, in sequence   (appliance.matching.engine)
    return (seq, ts_ns, cmd, events) per command              nothing before the commit succeeded

Under the interval policy a batch's commands wait, unapplied, for the fsync that covers them;
``poll(now_ns)`` (the idle loop) releases them. So the engine never holds a command that recovery
could lose, and a snapshot of it is always covered by the durable log. (Under the development policy
"none" nothing is fsynced and everything is released at once.)

The returned events refer to live order objects: consume them (encode feeds, execution reports)
before the next call, as the engine goes on mutating those objects.

A DurabilityError from the WAL propagates and the partition refuses every later call: the owner
must exit non-zero (wal.EXIT_DURABILITY_FAILURE) and let recovery start again from disk.
"""
from __future__ import annotations

import sys
from itertools import repeat
from typing import Sequence

from appliance import reasons as R
from appliance.catalogue import Command, Ev, Event
from appliance.matching.engine import Engine
from appliance.metrics import S_MATCH, S_SEQUENCE, StageClock
from appliance.sequencer import Sequencer
from appliance.snapshot import SnapshotStore, capture
from appliance.wal import (
    POLICY_NONE,
    DurabilityError,
    EpochFile,
    EpochState,
    LAYOUTS,
    LogWriter,
    MalformedCommand,
)

Result = tuple[int, int, Command, list[Event]]  # (seq, ts_ns, command, events); seq 0: not sequenced


class Partition:
    """Owned by the matching thread: the engine, its sequencer, its WAL writer and snapshots."""

    stages: StageClock | None = None    # the daemon's stage clock when stage timing is on
    # With the WAL stage (appliance.walstage): apply every batch at once, ahead of its durability;
    # the owner holds what the results make until the durable seq covers them.
    apply_ahead = False
    snapshot_held = False               # a snapshot is due and waits for the durable seq to catch up

    def __init__(
        self,
        engine: Engine,
        sequencer: Sequencer,
        wal: LogWriter,
        snapshots: SnapshotStore | None = None,
        *,
        snapshot_every_events: int = 0,
        snapshot_every_seconds: int = 0,
        epoch_file: EpochFile | None = None,
    ) -> None:
        if wal.next_seq != sequencer.next_seq or wal.epoch != sequencer.epoch:
            raise ValueError(
                f"sequencer (next {sequencer.next_seq}, epoch {sequencer.epoch}) and WAL writer "
                f"(next {wal.next_seq}, epoch {wal.epoch}) disagree"
            )
        self.engine = engine
        self.sequencer = sequencer
        self.wal = wal
        self.snapshots = snapshots
        self.snapshot_every_events = snapshot_every_events
        self.snapshot_every_ns = snapshot_every_seconds * 1_000_000_000
        self.epoch_file = epoch_file
        self.applied_seq = sequencer.next_seq - 1   # the engine holds every command up to this seq
        # committed batches (first seq, ts_ns, commands) not yet durable (interval policy)
        self._waiting: list[tuple[int, int, list[Command]]] = []
        self._since_snapshot = 0
        self._last_snapshot_ns: int | None = None
        self._failed: DurabilityError | None = None
        self._closed = False
        self.last_snapshot_seq = 0
        self.snapshots_skipped = 0

    # -- duty cycle -------------------------------------------------------------------------------
    def process_batch(self, cmds: Sequence[Command], now_ns: int,
                      given: Sequence[bytes | None] | None = None) -> list[Result]:
        """Sequence, log and commit a batch, then apply what is durable. See the module docstring.

        ``given``: the WAL body of each command as it came off a command ring (the gateway encoded
        and checked it with the same layout), None where the command must be encoded here. A given
        body is logged as it is: what replay decodes is what the engine was handed.
        """
        if self._failed or self._closed:
            self._refuse()
        results: list[Result] = []
        good: list[Command]
        bodies: list[bytes]
        if given is not None and None not in given and isinstance(cmds, list) and isinstance(given, list):
            good = cmds
            bodies = given
        else:
            layouts = LAYOUTS
            bodies = []
            good = []
            for cmd, body in zip(cmds, given) if given is not None else zip(cmds, repeat(None)):
                if body is None:
                    try:
                        body = layouts[cmd.KIND].encode_body(cmd)
                    except (MalformedCommand, AttributeError, KeyError, TypeError):
                        results.append((0, now_ns, cmd, [(Ev.REJECTED, cmd, R.SESSION_MALFORMED)]))
                        continue
                bodies.append(body)
                good.append(cmd)
        if good:
            seq, ts = self.sequencer.stamp(len(good), now_ns)
            self.wal.append_batch(seq, ts, self.sequencer.epoch, good, bodies)
            self._waiting.append((seq, ts, good))
        if self.stages is not None:
            self.stages.lap(S_SEQUENCE)
        try:
            durable = self.wal.commit(now_ns)
        except DurabilityError as e:
            self._failed = e
            raise
        if self.apply_ahead:
            if self._waiting:
                self._release(self.sequencer.next_seq - 1, results)
            self._maybe_snapshot(now_ns)
        elif self._waiting and self._waiting[0][0] <= durable:
            self._release(durable, results)
            self._maybe_snapshot(now_ns)
        return results

    def poll(self, now_ns: int) -> list[Result]:
        """Idle work: the interval policy's fsync and the release it allows; timed snapshots."""
        if self._failed or self._closed:
            self._refuse()
        results: list[Result] = []
        if self._waiting:
            try:
                durable = self.wal.poll(now_ns)
            except DurabilityError as e:
                self._failed = e
                raise
            if self._waiting[0][0] <= durable:
                self._release(durable, results)
        self._maybe_snapshot(now_ns)
        return results

    def _release(self, durable: int, results: list[Result]) -> None:
        """Apply and hand out the waiting batches that are durable (always whole batches)."""
        waiting = self._waiting
        apply_batch = self.engine.apply_batch
        append = results.append
        done = 0
        n = 0
        for first, ts, cmds in waiting:
            if first > durable:
                break
            out: list[Event] = []
            ends: list[int] = []
            apply_batch(cmds, out, ends)
            seq = first
            start = 0
            for cmd, end in zip(cmds, ends):
                append((seq, ts, cmd, out[start:end]))
                start = end
                seq += 1
            n += seq - first
            done += 1
        del waiting[:done]
        self.applied_seq = waiting[0][0] - 1 if waiting else durable
        self._since_snapshot += n
        if self.stages is not None:
            self.stages.lap(S_MATCH)

    # -- snapshots --------------------------------------------------------------------------------
    def recovered_from(self, snapshot_seq: int, replayed: int) -> None:
        """Recovery's report: the state came from a snapshot at snapshot_seq plus `replayed` commands."""
        self.last_snapshot_seq = snapshot_seq
        self._since_snapshot = replayed

    def _maybe_snapshot(self, now_ns: int) -> None:
        if self.snapshots is None:
            return
        if self._last_snapshot_ns is None:
            self._last_snapshot_ns = now_ns
            return
        if not self._since_snapshot:
            return
        if (self.snapshot_every_events and self._since_snapshot >= self.snapshot_every_events) or (
            self.snapshot_every_ns and now_ns - self._last_snapshot_ns >= self.snapshot_every_ns
        ):
            if self.apply_ahead and self.wal.policy != POLICY_NONE and self.wal.durable_seq < self.applied_seq:
                self.snapshot_held = True   # the owner stops taking commands until durability catches up
                return
            self.snapshot_held = False
            self.snapshot(now_ns)

    def snapshot(self, now_ns: int, wait: bool = False) -> bool:
        """Capture the engine state at applied_seq and write it: in a forked child (or here and now,
        with wait). Returns False when the previous child is still running (skipped).
        """
        if self.snapshots is None or self.applied_seq == self.last_snapshot_seq:
            return False
        if not wait and self.snapshots.busy:
            self.snapshots_skipped += 1
            return False
        if self.wal.policy != POLICY_NONE and self.wal.durable_seq < self.applied_seq:
            raise AssertionError("snapshot ahead of the durable WAL")  # _release guarantees this
        seq, ts, epoch, engine = self.applied_seq, self.sequencer.last_ts_ns, self.sequencer.epoch, self.engine
        if wait:
            self.snapshots.wait()
            self.snapshots.write(seq, capture(engine, seq, ts, epoch))
        elif not self.snapshots.submit(seq, lambda: capture(engine, seq, ts, epoch)):
            # captured in a forked child (the matching thread pauses for the fork only); when the
            # fork fails (SnapshotStore.errors says why), try again at the next interval
            self.snapshots_skipped += 1
            self._since_snapshot = 0
            self._last_snapshot_ns = now_ns
            return False
        self.last_snapshot_seq = self.applied_seq
        self._since_snapshot = 0
        self._last_snapshot_ns = now_ns
        return True

    # -- shutdown ---------------------------------------------------------------------------------
    def close(self, now_ns: int) -> list[Result]:
        """Clean shutdown: make everything durable, release it, snapshot, seal, mark the epoch clean.

        Returns the results released by the final fsync (interval policy).
        """
        if self._closed:
            return []
        if self._failed:
            self._refuse()
        results: list[Result] = []
        try:
            durable = self.wal.sync(now_ns)
        except DurabilityError as e:
            self._failed = e
            raise
        if self._waiting:
            self._release(durable, results)
        if self.snapshots is not None:
            try:
                self.snapshot(now_ns, wait=True)
            except OSError as e:  # the WAL has everything: a missing snapshot only costs replay time
                print(f"matchwire: shutdown snapshot at seq {self.applied_seq} not written: {e}", file=sys.stderr)
            self.snapshots.close()
        self.wal.close()
        if self.wal.failed:
            self._failed = self.wal.failed
            raise self.wal.failed
        if self.epoch_file is not None and self.epoch_file.still_mine():
            self.epoch_file.write(EpochState(self.sequencer.epoch, True, self.applied_seq, "clean"))
        self._closed = True
        return results

    def abandon(self) -> None:
        """Stop without a clean shutdown (after a failure): close files, mark nothing."""
        self._closed = True
        if self.snapshots is not None:
            self.snapshots.close()
        try:
            self.wal.close()
        except DurabilityError:
            pass

    @property
    def failed(self) -> DurabilityError | None:
        return self._failed

    def _refuse(self) -> None:
        if self._failed:
            raise self._failed
        raise DurabilityError("the partition is closed")
