"""Start-up is recovery: snapshots, WAL replay, epochs, the partition duty cycle, full disks."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile

import pytest

from appliance import reasons as R
from appliance import wal
from appliance.catalogue import Ev, NewOrder
from appliance.model import Instrument
from appliance.recovery import open_partition, recover_state
from appliance.snapshot import EngineSpec, list_snapshots
from appliance.wal import DurabilityError, EpochFile, WalConfig, WalCorruptError, WalError
from tools.killworker import STREAM_SPEC, CrashChecker, command_at, spawn_worker

MS = 1_000_000


def config(d: str, **kw: object) -> WalConfig:
    base: dict[str, object] = dict(segment_bytes=64 << 10, seal_bytes=8 << 10, snapshot_every_events=700,
                                   snapshot_every_seconds=0)
    base.update(kw)
    return WalConfig(d, **base)  # type: ignore[arg-type]


def feed(part, first: int, last: int, batch: int = 13, t0: int = 1_000 * MS) -> list:
    results = []
    s = first
    while s <= last:
        n = min(batch, last - s + 1)
        results += part.process_batch([command_at(x) for x in range(s, s + n)], t0 + s * MS)
        s += n
    return results


def reference(last: int):
    eng = STREAM_SPEC.build()
    out: list = []
    for s in range(1, last + 1):
        eng.apply(command_at(s), out)
        out.clear()
    return eng


def test_clean_shutdown_and_restart_continue_the_same_epoch_and_segment(tmp_path) -> None:
    d = str(tmp_path)
    op = open_partition(config(d), STREAM_SPEC)
    assert op.epoch == 1 and op.recovered.last_seq == 0
    res = feed(op.partition, 1, 1000)
    assert [r[0] for r in res] == list(range(1, 1001))
    op.partition.close(2_000 * MS)
    state = EpochFile(d).read()
    assert state is not None and state.clean
    segs = sorted(n for n in os.listdir(d) if n.endswith(".seg"))
    op2 = open_partition(config(d), STREAM_SPEC)
    assert op2.epoch == 1 and op2.recovered.last_seq == 1000
    assert op2.recovered.snapshot is not None and op2.recovered.snapshot.seq == 1000
    assert op2.recovered.replayed == 0
    assert op2.recovered.engine.state_hash() == reference(1000).state_hash()
    feed(op2.partition, 1001, 1500)
    op2.partition.close(3_000 * MS)
    assert sorted(n for n in os.listdir(d) if n.endswith(".seg"))[: len(segs)] == segs
    assert all(n.endswith("-0000000001.seg") for n in os.listdir(d) if n.endswith(".seg"))
    rec = recover_state(d, use_snapshots=False)
    assert rec.last_seq == 1500 and rec.engine.state_hash() == reference(1500).state_hash()


def test_a_crash_restart_takes_a_new_epoch_and_recovers_the_same_state(tmp_path) -> None:
    d = str(tmp_path)
    op = open_partition(config(d), STREAM_SPEC)
    feed(op.partition, 1, 2000)
    live = op.partition.engine.state_hash()
    op.partition.abandon()  # no clean shutdown
    op2 = open_partition(config(d), STREAM_SPEC)
    assert op2.epoch == 2 and op2.recovered.last_seq == 2000
    assert op2.recovered.engine.state_hash() == live == reference(2000).state_hash()
    assert op2.recovered.snapshot is not None and op2.recovered.replayed == 2000 - op2.recovered.snapshot.seq
    assert op2.partition.sequencer.next_seq == 2001 and op2.partition.sequencer.epoch == 2
    res = feed(op2.partition, 2001, 2100)
    assert res[0][0] == 2001
    op2.partition.abandon()
    recs = list(wal.WalReader(d).records())
    assert [r[0] for r in recs] == list(range(1, 2101))
    assert {r[2] for r in recs[2000:]} == {2}


def test_snapshot_and_full_replay_agree_and_a_corrupt_snapshot_falls_back(tmp_path) -> None:
    d = str(tmp_path)
    op = open_partition(config(d), STREAM_SPEC)
    for first in range(1, 3001, 500):
        feed(op.partition, first, first + 499)
        # A snapshot due while the previous one's child still writes is skipped: on a loaded machine
        # that could leave fewer than three, so each is let finish before the next is due.
        assert op.partition.snapshots is not None
        op.partition.snapshots.wait()
    op.partition.abandon()
    want = reference(3000).state_hash()
    snaps = list_snapshots(os.path.join(d, "snapshots"))
    assert len(snaps) == 3
    full = recover_state(d, use_snapshots=False)
    fast = recover_state(d)
    assert full.engine.state_hash() == fast.engine.state_hash() == want
    assert fast.snapshot is not None and fast.snapshot.seq == snaps[0][0] and full.replayed == 3000
    with open(snaps[0][1], "r+b") as f:          # newest damaged: the next one is used
        f.seek(200)
        f.write(b"\xff" * 8)
    rec = recover_state(d)
    assert rec.snapshot is not None and rec.snapshot.seq == snaps[1][0] and rec.engine.state_hash() == want
    assert any("unusable snapshot" in n for n in rec.notes)
    for _, path in snaps:                         # all damaged: full replay
        with open(path, "r+b") as f:
            f.write(b"garbage!")
    rec = recover_state(d)
    assert rec.snapshot is None and rec.replayed == 3000 and rec.engine.state_hash() == want


def test_a_snapshot_past_the_end_of_the_wal_is_not_used(tmp_path) -> None:
    d = str(tmp_path)
    op = open_partition(config(d, snapshot_every_events=0), STREAM_SPEC)
    feed(op.partition, 1, 800)
    op.partition.abandon()
    # a snapshot of state the log does not have (only possible under policy none)
    from appliance.snapshot import SnapshotStore, capture

    SnapshotStore(os.path.join(d, "snapshots")).write(900, capture(reference(900), 900, 0, 1))
    rec = recover_state(d)
    assert rec.snapshot is None and rec.last_seq == 800
    assert rec.engine.state_hash() == reference(800).state_hash()
    assert any("past the end of the WAL" in n for n in rec.notes)


def test_a_wal_written_for_another_engine_is_refused(tmp_path) -> None:
    d = str(tmp_path)
    open_partition(config(d), STREAM_SPEC).partition.close(0)
    other = EngineSpec.of([Instrument("OTHER", 1)])
    with pytest.raises(WalError, match="another engine configuration"):
        open_partition(config(d), other)


def test_corruption_in_the_middle_stops_start_up_with_file_and_offset(tmp_path) -> None:
    d = str(tmp_path)
    op = open_partition(config(d, snapshot_every_events=0), STREAM_SPEC)
    feed(op.partition, 1, 1500)
    op.partition.abandon()
    seg = sorted(os.path.join(d, n) for n in os.listdir(d) if n.endswith(".seg"))[0]
    with open(seg, "r+b") as f:
        f.seek(wal.SEGMENT_HEADER_SIZE + 118 * 3 + 40)
        f.write(b"\x00\x01")
    with pytest.raises(WalCorruptError) as ei:
        open_partition(config(d), STREAM_SPEC)
    assert ei.value.path == seg and str(ei.value).startswith("WAL corrupt: " + seg + " at offset ")


def test_a_wal_missing_its_beginning_needs_a_snapshot(tmp_path) -> None:
    d = str(tmp_path)
    op = open_partition(config(d, snapshot_every_events=0), STREAM_SPEC)
    feed(op.partition, 1, 1500)
    op.partition.abandon()
    os.unlink(sorted(os.path.join(d, n) for n in os.listdir(d) if n.endswith(".seg"))[0])
    with pytest.raises(WalCorruptError, match="in no snapshot"):
        recover_state(d)


# ------------------------------------------------------------------------------------------------
# the partition's duty cycle


def test_malformed_commands_are_rejected_unsequenced_and_leave_no_gap(tmp_path) -> None:
    op = open_partition(config(str(tmp_path)), STREAM_SPEC)
    bad = NewOrder(1, 1, 0, 100, 10_000, account="é")
    res = op.partition.process_batch([command_at(1), bad, command_at(2)], 5 * MS)
    assert [r[0] for r in res] == [0, 1, 2]
    assert res[0][3] == [(Ev.REJECTED, bad, R.SESSION_MALFORMED)]
    assert res[1][1] == res[2][1] == 5 * MS
    op.partition.close(6 * MS)
    assert [r[0] for r in wal.WalReader(str(tmp_path)).records()] == [1, 2]


def _segment_bytes(d: str) -> bytes:
    return b"".join(open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d)) if n.endswith(".seg"))


def test_bodies_off_the_ring_are_logged_as_they_came(tmp_path) -> None:
    """The daemon hands process_batch each command's WAL body as the gateway put it on the ring
    (None for its own ClockTicks): the log is byte for byte what encoding every command gives."""
    from appliance import codec_ring as C
    from appliance.catalogue import ClockTick
    from appliance.ring import LENGTH_BYTES
    cmds = [command_at(x) for x in range(1, 41)]
    slot = 128
    block = b"".join(len(r).to_bytes(LENGTH_BYTES, "little") + r.ljust(slot - LENGTH_BYTES, b"\0")
                     for r in (C.encode_command(c) for c in cmds))
    ring_cmds: list = []
    bodies: list = []
    assert C.decode_command_block(block, len(cmds), slot, ring_cmds, bodies) == 0
    assert bodies == [wal.LAYOUTS[c.KIND].encode_body(c) for c in cmds]
    ring_cmds.insert(7, ClockTick(3 * MS))
    bodies.insert(7, None)
    given, encoded = str(tmp_path / "given"), str(tmp_path / "encoded")
    a = open_partition(config(given), STREAM_SPEC).partition
    b = open_partition(config(encoded), STREAM_SPEC).partition
    ra = a.process_batch(ring_cmds, 5 * MS, bodies)
    rb = b.process_batch([*cmds[:7], ClockTick(3 * MS), *cmds[7:]], 5 * MS)
    assert [r[0] for r in ra] == [r[0] for r in rb] == list(range(1, 42))
    assert repr([r[3] for r in ra]) == repr([r[3] for r in rb])
    assert a.engine.state_hash() == b.engine.state_hash()
    a.close(6 * MS)
    b.close(6 * MS)
    assert _segment_bytes(given) == _segment_bytes(encoded)


def test_interval_policy_applies_and_releases_only_what_is_durable(tmp_path) -> None:
    op = open_partition(config(str(tmp_path), policy="interval", interval_ms=10), STREAM_SPEC)
    p = op.partition
    first = p.process_batch([command_at(1), command_at(2)], 100 * MS)
    assert [r[0] for r in first] == [1, 2]                 # first fsync is immediate
    held = p.process_batch([command_at(3)], 102 * MS)
    assert held == [] and p.applied_seq == 2 and p.wal.written_seq == 3 and p.wal.durable_seq == 2
    assert p.poll(105 * MS) == []
    more = p.process_batch([command_at(4)], 108 * MS)
    assert more == []
    rel = p.poll(112 * MS)
    assert [r[0] for r in rel] == [3, 4] and p.applied_seq == 4
    assert p.engine.state_hash() == reference(4).state_hash()
    p.process_batch([command_at(5)], 113 * MS)
    assert [r[0] for r in p.close(114 * MS)] == [5]


def test_a_failed_fsync_releases_nothing_and_the_partition_refuses_more(tmp_path, monkeypatch) -> None:
    op = open_partition(config(str(tmp_path)), STREAM_SPEC)
    p = op.partition
    feed(p, 1, 50)
    before = p.engine.state_hash()

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(wal, "_fdatasync", eio)
    with pytest.raises(DurabilityError, match="Input/output error"):
        p.process_batch([command_at(51), command_at(52)], 1)
    assert p.engine.state_hash() == before and p.applied_seq == 50
    monkeypatch.undo()
    with pytest.raises(DurabilityError):
        p.process_batch([command_at(53)], 2)
    with pytest.raises(DurabilityError):
        p.poll(3)
    p.abandon()
    rec = open_partition(config(str(tmp_path)), STREAM_SPEC).recovered
    assert rec.last_seq >= 50   # 51-52 reached the page cache (written, fsync failed): they may be there


def test_timed_snapshots_use_the_callers_clock(tmp_path) -> None:
    op = open_partition(config(str(tmp_path), snapshot_every_events=0, snapshot_every_seconds=2), STREAM_SPEC)
    p = op.partition
    p.process_batch([command_at(1)], 10_000 * MS)
    p.process_batch([command_at(2)], 11_000 * MS)
    assert p.last_snapshot_seq == 0
    p.process_batch([command_at(3)], 12_500 * MS)
    assert p.snapshots is not None
    p.snapshots.wait()
    assert p.last_snapshot_seq == 3
    p.close(13_000 * MS)


# ------------------------------------------------------------------------------------------------
# full disk: a real process, a real limit


def _run_until_full(d: str, *extra: str) -> tuple[int, str, list[bytes]]:
    proc = spawn_worker(d, "--segment-bytes", "32768", "--snapshot-every", "500", *extra)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, err.decode(), out.split(b"\n")[:-1]


def _check_acked_survive(d: str, lines: list[bytes]) -> None:
    checker = CrashChecker(d)
    checker.add_acks(lines)
    assert checker.max_acked > 0
    info = checker.check()
    assert info["durable"] >= checker.max_acked
    # and the next start repairs the torn tail and goes on
    op = open_partition(WalConfig(d), STREAM_SPEC)
    assert op.recovered.last_seq == info["durable"]
    op.partition.close(0)


def test_a_full_disk_rlimit_fsize_fails_closed_and_loses_no_ack(tmp_path) -> None:
    d = str(tmp_path / "wal")
    rc, err, lines = _run_until_full(d, "--fsize-limit", "20000")
    assert rc == wal.EXIT_DURABILITY_FAILURE, err
    assert "WAL writing failed" in err and "File too large" in err and "no further acknowledgements" in err
    assert "Traceback" not in err
    _check_acked_survive(d, lines)


def _can_mount_tmpfs() -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = tempfile.mkdtemp()
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", probe], check=True)
        return ok
    finally:
        os.rmdir(probe)


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs root and tmpfs mounts")
def test_a_full_tmpfs_fails_closed_and_loses_no_ack(tmp_path) -> None:
    mnt = str(tmp_path / "mnt")
    os.makedirs(mnt)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", mnt], check=True)
    try:
        d = os.path.join(mnt, "wal")
        rc, err, lines = _run_until_full(d)
        assert rc == wal.EXIT_DURABILITY_FAILURE, err
        assert "No space left on device" in err and "no further acknowledgements" in err
        copy = str(tmp_path / "copy")
        shutil.copytree(d, copy)        # recover on a disk with room, as an operator would
    finally:
        subprocess.run(["umount", mnt], check=True)
    _check_acked_survive(copy, lines)
