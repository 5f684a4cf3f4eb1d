"""Start-up is recovery: newest valid snapshot + WAL replay, then a new epoch and a WAL writer.

``open_partition(config, spec)`` is the one way a partition starts, after a clean shutdown or a crash:

1. the WAL directory's manifest (PARTITION.json) must describe the same engine (or is written, for a
   new directory);
2. the EPOCH file is replaced first: any older process still writing is fenced off from here on;
3. the newest snapshot that restores and checks is loaded (a damaged one falls back to an older one,
   and to a full replay when none is usable);
4. the WAL records after it are replayed (torn tail truncated and reported, corruption elsewhere
   stops start-up naming file and offset);
5. the sequencer continues the sequence; the writer continues the last segment after a clean
   shutdown (same epoch) or starts a new segment in the new epoch.

``recover_state(waldir)`` is steps 3-4 without touching anything (tools: replay, audit, tests).
Only the caller's process reads clocks; this module times its phases with perf_counter for reports.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import time
from typing import Any, Callable, Final

from appliance.catalogue import Command, Event
from appliance.fsutil import atomic_write
from appliance.matching.engine import Engine
from appliance.partition import Partition
from appliance.sequencer import Sequencer
from appliance.snapshot import EngineSpec, SnapshotInfo, SnapshotStore, load_newest
from appliance.wal import (
    POLICY_NONE,
    EpochFile,
    EpochState,
    WalConfig,
    WalCorruptError,
    WalError,
    WalReader,
    WalWriter,
    list_segments,
    new_token,
    warn_policy_none,
)

MANIFEST: Final = "PARTITION.json"


@dataclasses.dataclass
class Recovered:
    """The engine at the end of the durable log (or at until_seq), and how it was rebuilt."""

    engine: Engine
    spec: EngineSpec
    last_seq: int                   # the last command applied (0: none)
    last_ts_ns: int
    last_epoch: int
    snapshot: SnapshotInfo | None   # the snapshot it started from (None: full replay)
    replayed: int                   # commands replayed from the WAL
    notes: list[str]
    tail_sealed: bool = True
    seconds: float = 0.0
    last_segment: str | None = None


def read_manifest(waldir: str) -> EngineSpec:
    path = os.path.join(waldir, MANIFEST)
    try:
        with open(path, "rb") as f:
            d = json.loads(f.read())
    except FileNotFoundError:
        raise WalError(f"{waldir}: not a matchwire WAL directory (no {MANIFEST})") from None
    if d.get("format") != "matchwire-wal":
        raise WalError(f"{path}: not a matchwire WAL manifest")
    return EngineSpec.from_json(d["spec"])


def write_manifest(waldir: str, spec: EngineSpec) -> None:
    d = {"format": "matchwire-wal", "version": 1, "spec": spec.to_json()}
    atomic_write(os.path.join(waldir, MANIFEST), json.dumps(d, indent=1, sort_keys=True).encode() + b"\n")


def recover_state(
    waldir: str,
    spec: EngineSpec | None = None,
    *,
    snapshot_dir: str | None = None,
    use_snapshots: bool = True,
    repair: bool = False,
    until_seq: int | None = None,
    on_command: Callable[[int, int, Command, list[Event]], bool] | None = None,
    start_from: tuple[Engine, SnapshotInfo] | None = None,
) -> Recovered:
    """Rebuild the engine from the newest usable snapshot and the WAL after it.

    start_from: a snapshot already restored (``load_at``), to replay after it instead of looking
    for the newest (the daemon's feed replay from the snapshot its checkpoint goes with).

    until_seq (inclusive) stops early. on_command(seq, ts_ns, cmd, events), when given, is called
    after every replayed command (the slower, record-by-record path) and stops the replay by
    returning True; the events list is reused, so read it in the call. repair=True truncates a
    torn tail (start-up only). The cyclic GC is off while replaying.
    """
    t0 = time.perf_counter()
    spec = spec or read_manifest(waldir)
    notes: list[str] = []
    store_dir = snapshot_dir or os.path.join(waldir, "snapshots")
    max_seq: int | None = until_seq
    gc_was = gc.isenabled()
    gc.disable()
    try:
        while True:
            snap: tuple[Engine, SnapshotInfo] | None = None
            if start_from is not None:
                snap, start_from = start_from, None
            elif use_snapshots:
                snap = load_newest(store_dir, spec, max_seq, notes)
            if snap is not None:
                engine, info = snap
                start = info.seq
                notes.append(f"{info.path}: snapshot at seq {info.seq} loaded")
            else:
                engine, info, start = spec.build(), None, 0
            reader = WalReader(waldir, repair=repair)
            if reader.chain and reader.first_seq > start + 1:
                raise WalCorruptError(reader.chain[0][0].path, 0, f"the WAL starts at seq {reader.first_seq}; "
                                      f"records {start + 1}..{reader.first_seq - 1} are in no snapshot")
            replayed, last_seq, last_ts = _replay(engine, reader, start, until_seq, on_command)
            if info is not None and reader.last_seq < start:
                # A snapshot past the end of the durable log (possible under policy none only).
                notes.append(f"snapshot at seq {start} is past the end of the WAL (seq {reader.last_seq}): "
                             "falling back to an older one")
                max_seq = reader.last_seq
                continue
            break
    finally:
        if gc_was:
            gc.enable()
    chain = reader.chain
    return Recovered(
        engine=engine,
        spec=spec,
        last_seq=last_seq,
        last_ts_ns=max(last_ts, info.ts_ns if info else 0),
        last_epoch=reader.last_epoch or (info.epoch if info else 0),
        snapshot=info,
        replayed=replayed,
        notes=reader.notes + notes,
        tail_sealed=reader.tail_sealed,
        seconds=time.perf_counter() - t0,
        last_segment=chain[-1][0].path if chain else None,
    )


def _replay(
    engine: Engine,
    reader: WalReader,
    start: int,
    until_seq: int | None,
    on_command: Callable[[int, int, Command, list[Event]], bool] | None,
) -> tuple[int, int, int]:
    """Apply the records after `start`; returns (count, last seq applied, its ts_ns)."""
    apply = engine.apply
    apply_batch = engine.apply_batch
    out: list[Event] = []
    n = 0
    last_seq = start
    last_ts = 0
    if on_command is None and until_seq is None:
        for _first, cmds in reader.batches(start):
            apply_batch(cmds, out, None)
            out.clear()
            n += len(cmds)
        return n, max(start, reader.last_seq), reader.last_ts_ns
    if on_command is None:
        for first, cmds in reader.batches(start):
            if first + len(cmds) - 1 > until_seq:  # type: ignore[operator]
                cmds = cmds[: until_seq - first + 1]  # type: ignore[operator]
            apply_batch(cmds, out, None)
            out.clear()
            n += len(cmds)
            if cmds:
                last_seq = first + len(cmds) - 1
            if last_seq >= until_seq:  # type: ignore[operator]
                break
        return n, last_seq, 0  # ts unknown on the fast path: tools that need it pass on_command
    for seq, ts, _epoch, cmd in reader.records(start):
        if until_seq is not None and seq > until_seq:
            break
        apply(cmd, out)
        n += 1
        last_seq, last_ts = seq, ts
        stop = on_command(seq, ts, cmd, out)
        out.clear()
        if stop:
            break
    return n, last_seq, last_ts


@dataclasses.dataclass
class Opened:
    partition: Partition
    recovered: Recovered
    epoch: int
    notes: list[str]


def open_partition(
    config: WalConfig,
    spec: EngineSpec,
    *,
    use_snapshots: bool = True,
    on_command: Callable[[int, int, Command, list[Event]], bool] | None = None,
    start_from: tuple[Engine, SnapshotInfo] | None = None,
) -> Opened:
    """Start a partition: recover its state from disk and open the WAL for appending (see above).

    on_command and start_from are recover_state's: the daemon regenerates its feed in the same pass."""
    waldir = config.dir
    os.makedirs(waldir, exist_ok=True)
    if os.path.exists(os.path.join(waldir, MANIFEST)):
        have = read_manifest(waldir)
        if have != spec:
            raise WalError(f"{waldir}: the WAL was written for another engine configuration "
                           f"({os.path.join(waldir, MANIFEST)}); refusing to start")
    else:
        if list_segments(waldir):
            raise WalError(f"{waldir}: WAL segments without a {MANIFEST}")
        write_manifest(waldir, spec)
    if config.policy == POLICY_NONE:
        warn_policy_none(waldir)
    # Fence first: from this rename on, an older process still running cannot ack anything.
    fence = EpochFile(waldir)
    prev = fence.read()
    seg_epochs = [s.epoch for s in list_segments(waldir)]
    top = max(seg_epochs, default=0)
    if prev is not None and prev.clean and prev.epoch >= top:
        epoch = prev.epoch
    else:
        epoch = max(prev.epoch if prev else 0, top) + 1
    token = new_token()
    fence.write(EpochState(epoch, False, 0, token))
    rec = recover_state(waldir, spec, snapshot_dir=config.snapshots, use_snapshots=use_snapshots, repair=True,
                        on_command=on_command, start_from=start_from)
    notes = list(rec.notes)
    cont = None
    if prev is not None and prev.clean and epoch == prev.epoch:
        if (rec.last_seq == prev.last_seq and rec.tail_sealed and rec.last_segment is not None
                and rec.last_segment.endswith("-%010d.seg" % epoch)):
            cont = rec.last_segment
            notes.append(f"clean shutdown at seq {prev.last_seq}: epoch {epoch} continues in {cont}")
        else:
            epoch += 1
            fence.write(EpochState(epoch, False, 0, token))
            notes.append(f"the WAL does not end where the clean shutdown said (seq {prev.last_seq}, found "
                         f"{rec.last_seq}): new epoch {epoch}")
    else:
        notes.append(f"new epoch {epoch}" + (" (the previous run did not shut down cleanly)" if prev else ""))
    next_seq = rec.last_seq + 1
    writer = WalWriter(
        waldir, epoch, next_seq, policy=config.policy, interval_ms=config.interval_ms,
        segment_bytes=config.segment_bytes, seal_bytes=config.seal_bytes, fence=fence,
        continue_segment=cont,
    )
    sequencer = Sequencer(next_seq, epoch, rec.last_ts_ns)
    store = SnapshotStore(config.snapshots, config.snapshots_keep)
    part = Partition(
        rec.engine, sequencer, writer, store,
        snapshot_every_events=config.snapshot_every_events,
        snapshot_every_seconds=config.snapshot_every_seconds,
        epoch_file=fence,
    )
    part.recovered_from(rec.snapshot.seq if rec.snapshot else 0, rec.replayed)
    return Opened(part, rec, epoch, notes)


def describe(rec: Recovered) -> dict[str, Any]:
    """A one-line summary of a recovery (logs, benchmarks)."""
    return {
        "last_seq": rec.last_seq,
        "snapshot_seq": rec.snapshot.seq if rec.snapshot else None,
        "replayed": rec.replayed,
        "seconds": round(rec.seconds, 4),
        "state_hash": rec.engine.state_hash(),
    }
